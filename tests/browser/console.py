"""The console in a real browser (Debian's chromium, driven by Playwright).

tests/console.rs starts the broker-backed instances and runs this script; the two talk
in lines: the script prints `KILL` or `RESTART` when a step needs the harness to stop or
start instance B, and waits for the harness to answer with a line (after a restart, the
line ends with B's new address). Every step saves a screenshot under --shots. Any failed check raises, and the script exits non-zero with
the reason; the harness fails the test with it.
"""

import argparse
import os
import re
import sys
import time

from playwright.sync_api import sync_playwright


def say(line):
    print(line, flush=True)


def wait_harness(word):
    say(word)
    answer = sys.stdin.readline().strip()
    if not answer:
        raise SystemExit(f"the harness did not answer {word}")
    return answer


def until(what, check, timeout_s=60.0, every_s=0.25):
    """Retries `check` until it returns a true value; fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # a page in the middle of a refresh
            last = e
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def cluster_rows(page):
    """The instances table as {instance: state text}."""
    rows = page.locator("table.instances tbody tr")
    return {rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(2).inner_text() for i in range(rows.count())}


def partition_owners(page, store):
    rows = page.locator("table.partitions tbody tr")
    owners = {}
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        if cells.nth(0).inner_text() == store:
            owners[int(cells.nth(1).inner_text())] = (cells.nth(2).inner_text(), cells.nth(4).inner_text())
    return owners


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="instance A's HTTP address")
    ap.add_argument("--b", required=True, help="instance B's HTTP address")
    ap.add_argument("--a-id", required=True)
    ap.add_argument("--b-id", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--key", required=True, help="the aggregate id to create")
    ap.add_argument("--dead-key", required=True, help="the key of a record the harness sent to dead letters")
    ap.add_argument("--shots", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    a, b = f"http://{args.a}", f"http://{args.b}"
    store = "customers"
    errors = []

    def shot(page, name):
        page.screenshot(path=os.path.join(args.shots, name), full_page=True)
        say(f"screenshot {name}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

        # 1. The overview: the topology graph lists the customer nodes, quickly.
        started = time.monotonic()
        page.goto(f"{a}/ui", wait_until="load")
        load_s = time.monotonic() - started
        nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
        say(f"step 1: /ui loaded in {load_s * 1000:.0f} ms (navigation timing {nav:.0f} ms)")
        assert nav < 1000, f"/ui took {nav:.0f} ms to load"
        node = page.locator('svg.topology g.sub[data-node="customers"]')
        assert node.count() == 1, "the topology graph draws the customers node"
        graph = page.locator("svg.topology").inner_html()
        for part in ("customers", "store customers", "aggregate: customer"):
            assert part in graph, f"the graph shows {part!r}"
        shot(page, "01-topology.png")

        # 2. Both instances and every partition, each with an owner.
        until("both instances ready on the overview",
              lambda: cluster_rows(page).get(args.a_id) == "ready" and cluster_rows(page).get(args.b_id) == "ready")
        owners = until("every partition owned", lambda: (o := partition_owners(page, store)) and len(o) == args.partitions
                       and all(owner in (args.a_id, args.b_id) for owner, _ in o.values()) and o)
        say(f"step 2: owners {owners}")
        assert {o for o, _ in owners.values()} == {args.a_id, args.b_id}, f"both instances own partitions: {owners}"
        page.locator("table.partitions").scroll_into_view_if_needed()
        shot(page, "02-cluster.png")

        # 3. A CreateCustomer from the form: the reply and version 1.
        page.goto(f"{a}/ui/commands")
        page.fill('input[name="aggregate"]', "customer")
        page.fill('input[name="id"]', args.key)
        page.fill('input[name="type"]', "CreateCustomer")
        page.fill('input[name="expected_version"]', "0")
        page.fill('textarea[name="payload"]', '{"name": "Ada Lovelace", "email": "ada@example.org"}')
        page.click("form.command button")
        page.wait_for_selector("#outcome")
        outcome = page.inner_text("#outcome")
        say(f"step 3: {outcome}")
        assert outcome == "accepted, version 1", f"the command's outcome: {outcome!r}"
        shot(page, "03-command.png")

        # 4. The key on the other instance: its snapshot, version and history.
        page.goto(f"{b}/ui/stores/{store}")
        page.fill('input[name="key"]', args.key)
        page.click('form[action$="/lookup"] button')
        page.wait_for_selector("#version")
        assert page.inner_text("#version") == "1", "version 1 on the other instance"
        assert "Ada Lovelace" in page.inner_text("pre.json"), "the snapshot's state"
        timeline = page.inner_text("ol.timeline")
        assert "CustomerCreated" in timeline and "v1" in timeline, f"the history: {timeline!r}"
        assert page.input_value('form.command input[name="expected_version"]') == "1", "expected_version prefilled from the snapshot"
        shot(page, "04-history.png")

        # 5. Kill B: its partitions move to A; start it again: they come back.
        page.goto(f"{a}/ui")
        wait_harness("KILL")
        moved = until("B's partitions moved to A",
                      lambda: (o := partition_owners(page, store)) and len(o) == args.partitions
                      and all(owner == args.a_id and state == "ok" for owner, state in o.values()) and o, timeout_s=90)
        say(f"step 5: after the kill {moved}, instances {cluster_rows(page)}")
        assert args.b_id not in cluster_rows(page) or cluster_rows(page)[args.b_id] != "ready", "B is not shown ready"
        shot(page, "05-moved.png")
        # B comes back on a new port: the harness answers with its address.
        b = "http://" + wait_harness("RESTART").split()[-1]
        back = until("B back with partitions of its own",
                     lambda: cluster_rows(page).get(args.b_id) == "ready"
                     and (o := partition_owners(page, store)) and {owner for owner, _ in o.values()} == {args.a_id, args.b_id}
                     and all(state == "ok" for _, state in o.values()) and o, timeout_s=120)
        say(f"step 5: after the restart {back}")
        rebalances = page.inner_text("table.rebalances")
        assert "assigned" in rebalances and "revoked" in rebalances, f"the rebalance history: {rebalances!r}"
        shot(page, "06-back.png")

        # Dead letters: the record the harness sent that could not be read.
        page.goto(f"{b}/ui/dead-letters")
        letters = page.inner_text("table.dead-letters")
        assert args.dead_key in letters, f"the dead letter is listed: {letters!r}"
        shot(page, "07-dead-letters.png")

        # Read-only views without JavaScript: a store's page, an index query, a lookup.
        plain = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
        np = plain.new_page()
        np.goto(f"{a}/ui/stores/{store}")
        assert args.key in np.inner_text("table.entries"), "the store's page lists the key without JavaScript"
        np.select_option('select[name="field"]', "status")
        np.fill('input[name="value"]', "ACTIVE")
        np.click('form[action$="/customers"] button')
        assert args.key in np.inner_text("table.entries"), "the index query lists the key without JavaScript"
        np.fill('input[name="key"]', args.key)
        np.click('form[action$="/lookup"] button')
        assert np.inner_text("#version") == "1" and "CustomerCreated" in np.inner_text("ol.timeline"), "the lookup without JavaScript"
        np.goto(f"{a}/ui")
        assert np.locator('svg.topology g.sub[data-node="customers"]').count() == 1, "the overview without JavaScript"
        shot(np, "08-no-javascript.png")
        plain.close()

        assert not errors, "console errors: " + "; ".join(errors)
        browser.close()
    say("OK")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
