"""The landing page: a health board for the people on call, from the snapshot's verdicts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from string import Template

from aiohttp import hdrs, web

from exporter.config import Config, OwnLabels, Scope
from exporter.http.source import SOURCE_KEY, TELEMETRY_PATH_KEY, MetricsSource
from exporter.redaction import scrub
from exporter.snapshot import ImageKey, Snapshot
from exporter.view import HEALTH_ORDER, Health, ImageView, ReplicaHealth, ReplicaView

__all__ = ["MAX_LANDING_ROWS", "landing"]

# The landing page lists at most this many images (worst first); /metrics always has them all.
MAX_LANDING_ROWS = 500
_LANDING: Template = Template(
    resources.files("exporter.http").joinpath("landing.html").read_text(encoding="utf-8")
)


def _h(text: str, *, quote: bool = True) -> str:
    """``text`` through the output gate, then HTML-escaped: how every config or snapshot string gets in."""
    return html.escape(scrub(text), quote=quote)


def _time(ts: float | None) -> str:
    """A wall time as the page shows it (UTC, to the second), or ``never``."""
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_html(ts: float | None) -> str:
    """A wall time as a ``<time>`` element (machine-readable ``datetime``), or ``never``."""
    if ts is None:
        return "never"
    iso = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'<time datetime="{iso}">{_h(_time(ts))}</time>'


# -- the health board --------------------------------------------------------------------------------------
# Every colour on the page comes with a word and a symbol, so nothing depends on telling red from green.

# ``/?refresh=N`` bounds: the snapshot changes once per refresh cycle, so reloading faster only costs the
# browser; slower than an hour is no longer watching.
REFRESH_MIN_SECONDS = 5
REFRESH_MAX_SECONDS = 3600
_REFRESH_CHOICES = (30, 60, 300)  # the auto-refresh links offered in the header

_HEALTH_CLASS = {
    Health.MISSING: "missing",
    Health.FAILING: "failing",
    Health.UNHEALTHY: "unhealthy",
    Health.REPLICATING: "replicating",
    Health.HEALTHY: "healthy",
}
_HEALTH_SYMBOL = {
    Health.MISSING: "\u2298",  # ⊘
    Health.FAILING: "\u26a0",  # ⚠
    Health.UNHEALTHY: "\u2716",  # ✖
    Health.REPLICATING: "\u25d0",  # ◐
    Health.HEALTHY: "\u2714",  # ✔
}
_HEALTH_HINT = {
    Health.MISSING: "the API says ImageNotFound",
    Health.FAILING: "GetImage fails; data is stale",
    Health.UNHEALTHY: "status outside the healthy set",
    Health.REPLICATING: "a region has no available copy",
    Health.HEALTHY: "status and every copy available",
}
_REPLICA_CLASS = {
    ReplicaHealth.AVAILABLE: "ok",
    ReplicaHealth.NOT_AVAILABLE: "bad",
    ReplicaHealth.NOT_REPLICATED: "none",
    ReplicaHealth.UNKNOWN: "unknown",
}
_REPLICA_SYMBOL = {
    ReplicaHealth.AVAILABLE: "\u2714",  # ✔
    ReplicaHealth.NOT_AVAILABLE: "\u2716",  # ✖
    ReplicaHealth.NOT_REPLICATED: "\u2205",  # ∅
    ReplicaHealth.UNKNOWN: "?",
}
_REPLICA_HINT = {
    ReplicaHealth.AVAILABLE: "a copy in the replication healthy set",
    ReplicaHealth.NOT_AVAILABLE: "a copy outside the replication healthy set",
    ReplicaHealth.NOT_REPLICATED: "no copy in that region",
    ReplicaHealth.UNKNOWN: "the image never answered",
}
_NOT_REQUESTED = "\u00b7"  # a region the image was not asked to be in


def _sym(symbol: str) -> str:
    """A status symbol: seen, not read aloud (the word next to it is)."""
    return f'<span class="sym" aria-hidden="true">{symbol}</span>'


def _refresh_seconds(request: web.Request) -> int | None:
    """The ``refresh`` query parameter (whole seconds, bounded), or None; anything else is a 400."""
    values = request.query.getall("refresh", [])
    if not values:
        return None
    raw = values[0]
    # isascii: str.isdigit also accepts digits like "²" that int() refuses.
    ok = len(values) == 1 and raw.isascii() and raw.isdigit() and len(raw) <= 5
    if not ok or not REFRESH_MIN_SECONDS <= int(raw) <= REFRESH_MAX_SECONDS:
        raise web.HTTPBadRequest(
            text=f"refresh must be a whole number of seconds from {REFRESH_MIN_SECONDS}"
            f" to {REFRESH_MAX_SECONDS}\n"
        )
    return int(raw)


def _refresh_links(refresh: int | None) -> str:
    """The header's auto-refresh switch: the current period and how to stop it, or the choices."""
    if refresh is not None:
        return f'auto-refresh every {refresh} s (<a href="/">stop</a>)'
    links = " ".join(f'<a href="/?refresh={n}">{n} s</a>' for n in _REFRESH_CHOICES)
    return f"auto-refresh: {links}"


def _scope_rows(cfg: Config) -> list[tuple[str, str]]:
    """One (account, region) as configuration rows (no secrets: the credential type and role ARN only)."""
    endpoint = cfg.api.endpoint or f"(from region, {cfg.api.network})"
    role = [] if cfg.assume_role is None else [("assumed role", cfg.assume_role.role_arn)]
    return [
        ("account", cfg.account),
        ("region", cfg.api.region_id),
        ("endpoint", endpoint),
        ("protocol", cfg.api.protocol),
        ("credentials", cfg.credentials.type if cfg.credentials is not None else "default chain"),
        *role,
        ("refresh interval", f"{cfg.refresh.interval_seconds:g} s (jitter ±{cfg.refresh.jitter_ratio:.0%})"),
        ("static images", str(len(cfg.images))),
        ("discovery", "enabled" if cfg.discovery.enabled else "disabled"),
        *([("labels", ", ".join(f"{k}={v}" for k, v in cfg.labels.items()))] if cfg.labels else []),
    ]


def _config_rows(source: MetricsSource) -> str:
    """The configuration summary: each (account, region), then what they share."""
    cfg = source.config
    e = _h
    scopes = cfg.scopes()
    rows: list[tuple[str, str]] = []
    for n, scope in enumerate(scopes):
        if len(scopes) > 1:
            rows.append((f"target {n + 1} of {len(scopes)}", ""))
        rows += _scope_rows(scope)
    rows += [
        ("shard", f"{cfg.sharding.shard} of {cfg.sharding.shards}"),
        ("healthy statuses", ", ".join(cfg.status.healthy)),
        ("replication healthy statuses", ", ".join(cfg.status.replication_healthy)),
    ]
    return "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)


def _banners(snapshot: Snapshot) -> str:
    """What the person on call must read before the numbers: no data yet, or discovery failing."""
    out: list[str] = []
    if not snapshot.completed:
        out.append(
            '<div class="banner info" role="status" id="waiting"><strong>Waiting for the first refresh.'
            "</strong> No image has been checked yet; this page shows nothing until one has.</div>"
        )
    for scope, status in snapshot.scopes.items():
        discovery = status.discovery
        if discovery is None or discovery.up:
            continue
        if discovery.last_success is None:
            kept = "It has not succeeded since start-up: only the static images are watched."
        else:
            kept = (
                f"Still watching the {discovery.discovered} image(s) it found at"
                f" {_time_html(discovery.last_success)}; images created since are not watched."
            )
        where = "" if len(snapshot.expected) <= 1 else f" in {_h(scope.account)} / {_h(scope.region_id)}"
        reason = f': <span class="reason">{_h(discovery.reason)}</span>' if discovery.reason else ""
        # The first one keeps the id links and tests find it by; the others are told apart by data-*.
        ident = ' id="discovery"' if not any("banner bad discovery" in o for o in out) else ""
        out.append(
            f'<div class="banner bad discovery"{ident} role="alert" data-account="{_h(scope.account)}"'
            f' data-region="{_h(scope.region_id)}">'
            f"{_sym(_HEALTH_SYMBOL[Health.FAILING])} <strong>Discovery is failing{where}</strong>"
            f" (ListImages: <code>{_h(discovery.error_code or 'unknown error')}</code>{reason}). {kept}</div>"
        )
    return "\n".join(out)


def _counts(snapshot: Snapshot) -> str:
    """One tile per health class, worst first; a class with no image is greyed out."""
    if not snapshot.completed:
        return ""
    tiles = []
    for health, n in snapshot.health_counts().items():
        css = _HEALTH_CLASS[health] + ("" if n else " zero")
        tiles.append(
            f'<li class="tile h-{css}" data-health="{_h(str(health))}">'
            f'<span class="n">{n}</span> <span class="word">{_sym(_HEALTH_SYMBOL[health])}'
            f" {_h(str(health))}</span> <small>{_h(_HEALTH_HINT[health])}</small></li>"
        )
    return '<ul class="counts" id="counts">' + "".join(tiles) + "</ul>"


def _summary(snapshot: Snapshot, total: int) -> str:
    """The line under the tiles: how many images, when they were last checked, discovery."""
    if not snapshot.completed:
        return ""
    parts = [
        f"{total} image(s) watched",
        f"last refresh {_time_html(snapshot.refreshed_at)} (took {snapshot.duration_seconds or 0:.2f} s)",
    ]
    discovery = snapshot.discovery
    if discovery is not None and discovery.up:
        parts.append(f"discovery ok: {discovery.discovered} image(s) found")
    return '<p class="summary" id="summary">' + " &middot; ".join(parts) + "</p>"


def _health_cell(view: ImageView) -> str:
    """The image's verdict: symbol and word, what is wrong, and for a failing one its code, since when and
    why (the error's reason)."""
    detail = ""
    if view.health in (Health.FAILING, Health.MISSING) and view.error_code is not None:
        detail = (
            f'<div class="detail"><code class="code">{_h(view.error_code)}</code>'
            f" since {_time_html(view.error_since)}</div>"
        )
        if view.error_reason:  # the message that says why (gated and one line in the view)
            detail += f'<div class="detail reason">{_h(view.error_reason)}</div>'
    # The view's own phrases, so a narrow screen sees what is wrong before scrolling to the regions;
    # not the failing/missing one (the code line above says it) nor "unknown" regions (nothing is known).
    unknown = {f"{r.region} {r.health}" for r in view.replicas if r.health is ReplicaHealth.UNKNOWN}
    rest = [p for p in view.problems if not p.startswith(("failing:", "missing ")) and p not in unknown]
    if rest:
        detail += f'<div class="detail problems">{_h(", ".join(rest))}</div>'
    return (
        f'<td class="health h-{_HEALTH_CLASS[view.health]}">{_sym(_HEALTH_SYMBOL[view.health])}'
        f' <span class="word">{_h(str(view.health))}</span>{detail}</td>'
    )


def _status_cell(view: ImageView) -> str:
    """The image's status; marked as last known when the current call failed."""
    if view.status is None:
        return '<td class="status muted">\u2014</td>'
    stale = view.health in (Health.FAILING, Health.MISSING)
    css = "status bad" if view.available == 0.0 and not stale else "status"
    detail = '<div class="detail">last known</div>' if stale else ""
    return f'<td class="{css}">{_h(view.status)}{detail}</td>'


def _replica_cell(replica: ReplicaView | None, region: str) -> str:
    """One region of one image: the copy's status and its health, as symbol, word and colour."""
    if replica is None:
        return f'<td class="r r-na" data-region="{_h(region)}" title="not requested">{_NOT_REQUESTED}</td>'
    health = replica.health
    status = _h(replica.status) if replica.status is not None else "no copy"
    if health is ReplicaHealth.UNKNOWN:
        status = "\u2014"
    word = _h(str(health))
    # The health word under the status, unless it would only repeat it ("Available" / "available").
    detail = "" if status.lower() == word else f'<div class="detail">{word}</div>'
    return (
        f'<td class="r r-{_REPLICA_CLASS[health]}" data-region="{_h(region)}" data-replica="{word}"'
        f' title="{_h(_REPLICA_HINT[health])}">{_sym(_REPLICA_SYMBOL[health])} {status}{detail}</td>'
    )


def _own_labels(own: Sequence[tuple[str, str]]) -> str:
    """An image's own labels (config ``labels:``), as /metrics carries them, under its id."""
    if not own:
        return ""
    items = "".join(f'<li data-label="{_h(n)}">{_h(n)}=<b>{_h(v)}</b></li>' for n, v in own)
    return f'<ul class="detail own-labels">{items}</ul>'


def _image_row(
    view: ImageView, name: str, regions: Sequence[str], own: Sequence[tuple[str, str]] = ()
) -> str:
    """One matrix row: id (and name, and own labels), health, status, then one cell per region column."""
    by_region = {r.region: r for r in view.replicas}
    label = (f'<div class="detail">{_h(name)}</div>' if name else "") + _own_labels(own)
    cells = "".join(_replica_cell(by_region.get(region), region) for region in regions)
    return (
        f'<tr class="h-{_HEALTH_CLASS[view.health]}" data-image="{_h(view.image_id)}"'
        f' data-health="{_h(str(view.health))}"'
        f' data-account="{_h(view.account)}" data-region="{_h(view.region_id)}">'
        f'<th scope="row" class="image"><code>{_h(view.image_id)}</code>{label}</th>'
        f"{_health_cell(view)}{_status_cell(view)}{cells}</tr>"
    )


def _legend() -> str:
    """What each cell symbol means (the words are in the cells too)."""
    items = [f"{_sym(_REPLICA_SYMBOL[h])} {_h(str(h))}: {_h(_REPLICA_HINT[h])}" for h in ReplicaHealth]
    items.append(f"{_sym(_NOT_REQUESTED)} not requested")
    return '<p class="legend muted">' + " &middot; ".join(items) + "</p>"


def _group_row(scope: Scope, views: Sequence[ImageView], columns: int) -> str:
    """The heading of one (account, region) in the matrix: who, and how many of its images need someone."""
    bad = sum(1 for v in views if v.health is not Health.HEALTHY)
    state = f"{bad} not healthy" if bad else "all healthy"
    return (
        f'<tr class="group" data-account="{_h(scope.account)}" data-region="{_h(scope.region_id)}">'
        f'<th scope="rowgroup" colspan="{columns}">account <code>{_h(scope.account)}</code> &middot;'
        f" region <code>{_h(scope.region_id)}</code> &middot; {len(views)} image(s), {state}</th></tr>"
    )


def _label_group_row(name: str, value: str, views: Sequence[ImageView], columns: int) -> str:
    """The heading of the images with one value of the own label the board is grouped by."""
    bad = sum(1 for v in views if v.health is not Health.HEALTHY)
    state = f"{bad} not healthy" if bad else "all healthy"
    which = f"{_h(name)} <code>{_h(value)}</code>" if value else f"no {_h(name)}"
    return (
        f'<tr class="group" data-label="{_h(name)}" data-value="{_h(value)}">'
        f'<th scope="rowgroup" colspan="{columns}">{which} &middot; {len(views)} image(s), {state}</th></tr>'
    )


def _group_by(request: web.Request, labels: OwnLabels) -> str | None:
    """The ``group`` query parameter: one of the configured own label names, or None (account and
    region); anything else is a 400."""
    values = request.query.getall("group", [])
    if not values:
        return None
    if len(values) != 1 or values[0] not in labels.names:
        known = ", ".join(labels.names) or "none is configured"
        raise web.HTTPBadRequest(text=f"group must be the name of an own label ({known})\n")
    return values[0]


def _grouping_links(labels: OwnLabels, group: str | None, refresh: int | None) -> str:
    """Links that group the board by account and region, or by one own label (when there are any); each
    keeps the auto-refresh."""
    if not labels.names:
        return ""
    again = f"refresh={refresh}" if refresh is not None else ""
    choices = [(f"/?{again}" if again else "/", "account and region", group is None)]
    choices += [(f"/?group={n}" + (f"&{again}" if again else ""), n, group == n) for n in labels.names]
    links = " ".join(
        f"<strong>{_h(text)}</strong>" if current else f'<a href="{_h(href)}">{_h(text)}</a>'
        for href, text, current in choices
    )
    return f'<p class="grouping" id="grouping">group by: {links}</p>'


def _matrix(snapshot: Snapshot, labels: OwnLabels, group: str | None = None) -> str:
    """The image-by-region matrix grouped by account and region, or by the value of the own label
    ``group`` (the group with the worst image first), worst first within each (HEALTH_ORDER, then id), at
    most MAX_LANDING_ROWS rows."""
    if not snapshot.completed:
        return '<p class="muted" id="images">No image checked yet.</p>'
    rank = {h: i for i, h in enumerate(HEALTH_ORDER)}
    own = {key: labels.image(key.account, key.image_id) if labels.names else () for key in snapshot.views}
    at = labels.names.index(group) if group is not None else -1

    def group_of(key: ImageKey) -> tuple[bool, str, str]:
        # By label value, the images without the label after the others at equal worst; else by scope.
        if group is not None:
            return (own[key][at] == "", own[key][at], "")
        return (False, key.account, key.region_id)

    groups: dict[tuple[bool, str, str], list[tuple[ImageKey, ImageView]]] = {}
    for key, view in snapshot.views.items():
        groups.setdefault(group_of(key), []).append((key, view))
    worst = {g: min(rank[v.health] for _, v in items) for g, items in groups.items()}
    ordered = sorted(
        snapshot.views.items(),
        key=lambda item: (worst[group_of(item[0])], group_of(item[0]), rank[item[1].health], item[0]),
    )
    shown = ordered[:MAX_LANDING_ROWS]
    if not shown:
        return '<p id="images">No image is watched.</p>'
    regions = sorted({r.region for _, v in shown for r in v.replicas})
    rows = []
    current: tuple[bool, str, str] | None = None
    for key, view in shown:
        found = group_of(key)
        members = [v for _, v in groups[found]]
        if group is not None and found != current:
            rows.append(_label_group_row(group, own[key][at], members, 3 + len(regions)))
        # One heading per (account, region), when there are several (one says nothing the page does not).
        elif group is None and found != current and len(groups) > 1:
            rows.append(_group_row(Scope(key.account, key.region_id), members, 3 + len(regions)))
        current = found
        state = snapshot.images.get(key)  # for the name only: the verdict is the view's
        img = state.image if state is not None else None
        name = " ".join(filter(None, (img.name, img.version))) if img is not None else ""
        rows.append(_image_row(view, name, regions, labels.shown(own[key]) if labels.names else ()))
    head = "".join(f'<th scope="col" class="region">{_h(r)}</th>' for r in regions)
    cut = ""
    if len(shown) < len(ordered):
        cut = (
            f'<p class="cut" id="cut">Showing the {len(shown)} worst of {len(ordered)} images;'
            " the metrics have them all.</p>"
        )
    return (
        f"{cut}"
        '<div class="matrix-box"><table class="matrix" id="images"><thead><tr>'
        f'<th scope="col" class="image">image</th><th scope="col">health</th><th scope="col">status</th>'
        f"{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>" + _legend()
    )


def _title(snapshot: Snapshot) -> str:
    """The tab title leads with the number of images that need someone (visible among other tabs)."""
    base = "E-HPC image exporter"
    if not snapshot.completed:
        return f"(waiting) {base}"
    bad = sum(n for h, n in snapshot.health_counts().items() if h is not Health.HEALTHY)
    if snapshot.discovery_failed:
        return f"({bad} not healthy, discovery failing) {base}"
    return f"({bad} not healthy) {base}" if bad else f"(all healthy) {base}"


async def landing(request: web.Request) -> web.Response:
    """The health board."""
    """The health board: banners, counts by health, the worst-first matrix, the folded config."""
    refresh = _refresh_seconds(request)  # first: a bad request answers 400 before any work
    source = request.app[SOURCE_KEY]
    rendered = source.rendered  # one read: the whole page shows one snapshot, with the labels /metrics has
    snapshot, labels = rendered.snapshot, rendered.labels
    group = _group_by(request, labels)
    page = _LANDING.substitute(
        title=_h(_title(snapshot)),
        meta_refresh=f'<meta http-equiv="refresh" content="{refresh}">' if refresh is not None else "",
        version=_h(source.version),
        telemetry_path=_h(request.app[TELEMETRY_PATH_KEY], quote=True),
        refresh_links=_refresh_links(refresh),
        banners=_banners(snapshot),
        counts=_counts(snapshot),
        summary=_summary(snapshot, len(snapshot.views)),
        matrix=_grouping_links(labels, group, refresh) + _matrix(snapshot, labels, group),
        config_rows=_config_rows(source),
    )
    return web.Response(
        text=page, content_type="text/html", charset="utf-8", headers={hdrs.CACHE_CONTROL: "no-store"}
    )
