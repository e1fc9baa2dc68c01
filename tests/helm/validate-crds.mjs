// Validate Prometheus Operator objects (ServiceMonitor, PrometheusRule, ...) in rendered manifests against
// the ajv validators that @kubernetes-models/prometheus-operator builds from the operator's CRD schemas.
//
//   node tests/helm/validate-crds.mjs rendered.yaml [more.yaml ...]
//
// Prints one JSON line per monitoring.coreos.com document: {"file", "kind", "name", "ok", "error"}.
// Exit code 0 when every such document is valid, 1 otherwise, 2 on a usage or parse error.
// Run from anywhere: the packages resolve from tools/node/node_modules (NODE_PATH is not used by ESM, so
// they are imported by absolute path).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.resolve(here, "..", "..", "tools", "node", "node_modules");
const load = (spec) => import(pathToFileURL(path.join(modules, spec)).href);

const yaml = await load("js-yaml/dist/js-yaml.mjs");
const v1 = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js");

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-crds.mjs FILE...");
  process.exit(2);
}

let rc = 0;
for (const file of files) {
  let docs;
  try {
    docs = yaml.loadAll(fs.readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`${file}: ${e.message}`);
    process.exit(2);
  }
  for (const doc of docs) {
    if (!doc || doc.apiVersion !== "monitoring.coreos.com/v1") continue;
    const name = doc.metadata && doc.metadata.name;
    const Model = v1[doc.kind];
    let error = null;
    if (typeof Model !== "function") {
      error = `unknown kind ${doc.kind}`;
    } else {
      try {
        new Model(doc).validate();
      } catch (e) {
        error = e.message;
      }
    }
    if (error) rc = 1;
    console.log(JSON.stringify({ file, kind: doc.kind, name, ok: error === null, error }));
  }
}
process.exit(rc);
