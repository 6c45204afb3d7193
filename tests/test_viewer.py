"""Trajectory viewer: credit columns by hand, escaping, 404s, corrupt lines, and a real browser."""

import math
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from agentrl.eval.viewer import adv_colour, create_app, credit_columns, start_viewer
from agentrl.types import Step, Trajectory, write_trajectories

SCRIPT_OBS = "<script>window.__pwned = 1</script> you see a <b>box</b> & a 'key'"
EVIL_TASK = "pick-<img src=x onerror=alert(1)>"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def traj(task, group, tid, outcomes_steps, success, values=None, invalid_at=()):
    steps = []
    for k, reward in enumerate(outcomes_steps):
        info = {} if values is None else {"value": values[k]}
        steps.append(
            Step(
                obs=f"obs {tid} {k}",
                response=f"think; act {k}",
                action=f"go {k}",
                reward=reward,
                valid=k not in invalid_at,
                state_key=f"{task}/s{k}",
                info=info,
            )
        )
    return Trajectory(task, group, tid, steps, terminated=True, success=success)


def group_a():
    """One group, outcomes 1, 0, 0; b's second step is invalid."""
    return [
        traj("maze-1", "ga", "a", [0.0, 1.0], True),
        traj("maze-1", "ga", "b", [0.0, 0.0], False, invalid_at=(1,)),
        traj("maze-1", "ga", "c", [0.0], False),
    ]


def group_b():
    t1 = traj(EVIL_TASK, "gb", "d", [0.0, 1.0], True)
    t1.steps[0].obs = SCRIPT_OBS
    t1.steps[0].response = "</pre><script>window.__pwned = 2</script>"
    t1.steps[0].prompt = [
        {"role": "system", "content": "be <careful>"},
        {"role": "user", "content": SCRIPT_OBS},
    ]
    return [t1, traj(EVIL_TASK, "gb", "e", [0.0, 0.0, 0.0], False)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    path = root / "trajectories.jsonl"
    write_trajectories(path, group_a())
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"task_id": "cut off in the mid\n')  # line 4: corrupt
    write_trajectories(path, group_b(), append=True)
    (root / "eval").mkdir()
    critic = [
        traj("maze-2", "gc", "f", [0.0, 1.0], True, values=[0.5, 0.8]),
        traj("maze-2", "gc", "g", [0.0], False, values=[0.25]),
    ]
    write_trajectories(root / "eval" / "critic.jsonl", critic)
    return root


@pytest.fixture(scope="module")
def client(run_dir):
    return TestClient(create_app(run_dir))


def test_credit_columns_match_the_formulas_by_hand():
    cols = credit_columns(group_a())
    # rows: a0 a1 b0 b1(invalid) c0. RLOO: R_i - mean of the others, minus 0.1 on invalid rows.
    assert cols.step["rloo"] == pytest.approx([1.0, 1.0, -0.5, -0.6, -0.5])
    # GRPO mean_std: mean 1/3, sample std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3); eps 1e-6.
    std = math.sqrt(1 / 3)
    hi, lo = (2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6)
    assert cols.step["grpo"] == pytest.approx([hi, hi, lo, lo - 0.1, lo])
    assert cols.first_row == {"a": 0, "b": 2, "c": 4}
    assert cols.scale["rloo"] == pytest.approx(1.0)
    assert "gigpo" in cols.step and "hgpo" in cols.step  # state keys present
    assert "critic" in cols.skipped["gae"]
    assert "switch" in cols.skipped["hiper"]
    assert "turn_reward" in cols.skipped["mt_grpo"]


def test_critic_methods_run_when_steps_carry_values():
    cols = credit_columns(
        [
            traj("m", "g", "f", [0.0, 1.0], True, values=[0.5, 0.8]),
            traj("m", "g", "g", [0.0], False, values=[0.25]),
        ]
    )
    # GAE with gamma = lam = 1: A_t = (sum of rewards from t) - V_t, no penalty on valid rows, then
    # whitened over the episodes shown (the default, as training does)
    raw = np.array([1.0 - 0.5, 1.0 - 0.8, 0.0 - 0.25])
    assert cols.step["gae"] == pytest.approx((raw - raw.mean()) / raw.std())
    assert "gae" not in cols.skipped


def test_duplicate_ids_give_a_reason_not_a_crash():
    cols = credit_columns([traj("m", "g", "same", [1.0], True), traj("m", "g", "same", [0.0], False)])
    assert cols.step == {} and "duplicate traj_id" in cols.error


def test_adv_colour_sign_and_scale():
    assert adv_colour(0.0, 1.0) == "background:transparent"
    assert adv_colour(2.0, 2.0) == "background:rgba(22,163,74,0.700)"
    assert adv_colour(-1.0, 2.0) == "background:rgba(220,38,38,0.390)"
    assert adv_colour(-5.0, 2.0) == adv_colour(-2.0, 2.0)


def test_index_lists_episodes_and_reports_the_corrupt_line(client):
    page = client.get("/").text
    assert page.count("class='episode'") == 7
    assert "7 of 7 episodes" in page
    assert re.search(r"trajectories.jsonl line 4: ", page)
    assert "eval/critic.jsonl (2)" in page


def test_everything_user_controlled_is_escaped(client):
    page = client.get("/").text
    assert "<img" not in page and "pick-&lt;img src=x onerror=alert(1)&gt;" in page
    d = client.get("/", params={"task": "pick-<img"}).text
    ep_id = re.search(r"<a href='/episode/(\d+)'>", d).group(1)
    page = client.get(f"/episode/{ep_id}").text
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;" in page
    assert "<summary>prompt</summary><pre>[system]\nbe &lt;careful&gt;\n\n[user]\n&lt;script&gt;" in page
    reflected = client.get("/", params={"task": "'><script>x</script>"}).text
    assert "<script>" not in reflected and "value='&#x27;&gt;&lt;script&gt;" in reflected


def test_filters(client):
    ok = client.get("/", params={"success": "1"}).text
    assert ok.count("class='episode'") == 3 and "class='fail'" not in ok
    maze2 = client.get("/", params={"task": "MAZE-2"}).text
    assert maze2.count("class='episode'") == 2 and "2 of 7 episodes" in maze2


@pytest.mark.parametrize("path", ["/episode/7", "/episode/999", "/episode/abc", "/episode/-1", "/nothing"])
def test_unknown_ids_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "Not found" in r.text


def test_episode_page_shows_steps_and_skipped_methods(client):
    page = client.get("/episode/1").text  # trajectory b: outcome 0, second step invalid
    assert page.count("class='step'") == 2
    values = re.findall(r"data-method='rloo' data-value='([^']+)'", page)
    assert [float(v) for v in values] == pytest.approx([-0.5, -0.6])
    assert "critic method" in page and "hiper" in page
    critic = client.get("/episode/5").text  # eval/critic.jsonl, trajectory f
    raw = np.array([0.5, 0.2, -0.25])  # G - V of f's two steps and g's one, whitened over the file
    assert [float(v) for v in re.findall(r"data-method='gae' data-value='([^']+)'", critic)] == pytest.approx(
        list(((raw - raw.mean()) / raw.std())[:2]), abs=1e-3
    )


def test_files_are_reread_when_they_change(tmp_path):
    write_trajectories(tmp_path / "trajectories.jsonl", group_a())
    c = TestClient(create_app(tmp_path))
    assert "3 of 3 episodes" in c.get("/").text
    write_trajectories(tmp_path / "trajectories_more.jsonl", group_b())
    assert "5 of 5 episodes" in c.get("/").text
    assert c.get("/episode/4").status_code == 200


def test_training_rollouts_per_iteration_are_listed(tmp_path):
    (tmp_path / "trajectories").mkdir()
    write_trajectories(tmp_path / "trajectories" / "iter-000000.jsonl", group_a())
    write_trajectories(tmp_path / "trajectories" / "iter-000001.jsonl", group_b())
    c = TestClient(create_app(tmp_path))
    page = c.get("/").text
    assert "5 of 5 episodes" in page and "trajectories/iter-000001.jsonl (2)" in page
    assert "data-method='rloo'" in c.get("/episode/4").text


def test_empty_and_missing_run_dirs(tmp_path):
    assert "No trajectory files" in TestClient(create_app(tmp_path)).get("/").text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_app(tmp_path / "nope")


def test_serve_viewer_prints_its_url_and_serves(run_dir):
    code = "import sys; from agentrl.eval.viewer import serve_viewer; serve_viewer(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_viewer_socket_queues_connections_before_uvicorn_runs(run_dir):
    """serve_viewer prints its URL before uvicorn's loop starts: a client that connects at once waits."""
    import socket

    from agentrl.serving import ServerThread

    server = ServerThread(create_app(run_dir), "127.0.0.1", 0)
    try:
        with pytest.raises(ConnectionRefusedError):  # built, not listening: down
            socket.create_connection(server.sock.getsockname()[:2], timeout=2).close()
        server.listen()  # what serve_viewer does before printing its URL
        socket.create_connection(server.sock.getsockname()[:2], timeout=2).close()  # queued, not refused
    finally:
        server.sock.close()


# ----------------------------------------------------------------------------- real browser


@pytest.fixture(scope="module")
def server(run_dir):
    url, stop = start_viewer(run_dir)
    yield url
    stop()


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser.new_page()
        browser.close()


def test_browser_list_click_episode_see_advantages(server, page):
    assert server.startswith("http://127.0.0.1:")
    page.goto(server)
    assert page.locator("tr.episode").count() == 7
    page.fill("#task", "maze-1")
    page.select_option("#success", "0")
    page.click("#filter")
    page.wait_for_url(re.compile(r"task=maze-1"))
    assert page.locator("tr.episode").count() == 2  # b and c failed
    page.click("tr.episode >> nth=0 >> a")
    page.wait_for_selector("#steps")
    assert page.locator("h1").inner_text() == "Episode 1"
    methods = page.locator("th.method").evaluate_all("els => els.map(e => e.dataset.method)")
    assert {"grpo", "rloo", "gigpo", "hgpo", "salt", "reinforce_pp", "seeupo"} <= set(methods)
    assert "gae" not in methods
    rloo = page.locator("td.adv[data-method='rloo']")
    assert [float(v) for v in rloo.evaluate_all("els => els.map(e => e.dataset.value)")] == pytest.approx(
        [-0.5, -0.6]
    )
    colour = rloo.nth(1).evaluate("e => getComputedStyle(e).backgroundColor")
    r, g, b = (int(x) for x in re.findall(r"\d+", colour)[:3])
    assert (r, g, b) == (220, 38, 38)
    assert "critic method" in page.locator("#skipped").inner_text()
    page.click("#back")
    page.wait_for_selector("#episodes")
    assert page.locator("#bad-lines").inner_text().count("line 4") == 1


def test_browser_does_not_run_injected_scripts(server, page):
    page.goto(server + "?" + "task=pick")
    page.click("tr.episode >> nth=0 >> a")
    page.wait_for_selector("#steps")
    assert page.evaluate("window.__pwned === undefined")
    assert SCRIPT_OBS in page.locator("tr.step >> nth=0").inner_text()
    green = (
        page.locator("td.adv[data-method='rloo']").nth(0).evaluate("e => getComputedStyle(e).backgroundColor")
    )
    assert [int(x) for x in re.findall(r"\d+", green)[:3]] == [22, 163, 74]
    assert float(
        page.locator("td.adv[data-method='rloo']").nth(0).get_attribute("data-value")
    ) == pytest.approx(1.0)


def test_start_viewer_binds_loopback_and_stop_closes_it(tmp_path):
    write_trajectories(tmp_path / "trajectories.jsonl", group_a())
    url, stop = start_viewer(tmp_path)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert "3 of 3 episodes" in httpx.get(url, timeout=10).text
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_a_tree_group_shows_its_branches_and_copied_turns(tmp_path):
    """Root a branched after turn 0 into b: b's first step is a copy (greyed), and the group table says
    where b left a; the tree estimators have columns."""
    root = traj("maze-1", "gt", "a", [0.0, 1.0], True)
    branch = traj("maze-1", "gt", "a.b1-0", [0.0, 0.0], False)
    branch.steps[0] = Step(**{**root.steps[0].__dict__, "info": {"copy_of": "a#0"}})
    branch.parent_id, branch.branch_turn = "a", 1
    write_trajectories(tmp_path / "trajectories.jsonl", [root, branch])
    c = TestClient(create_app(tmp_path))
    page = c.get("/episode/1").text
    assert "<th>branch of</th>" in page and re.search(
        r"<td class='branch'><a [^>]*>0</a> at turn 1</td>", page
    )
    assert page.count("<tr class='step copy'") == 1 and "copied from a#0" in page
    assert "data-method='treepo'" in page and "data-method='spo_tree'" in page
    assert "branch of" not in c.get("/episode/0").text.split("<h2>Steps")[1]  # the steps of a root: no copies
