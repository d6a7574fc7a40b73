"""Best-k selection on runs in a real MLflow SQLite store."""

import pytest

from hybridlens.analysis.mlflow_layout import TAG_KIND, TAG_OUTCOME, TAG_PARENT, TAG_STUDY
from hybridlens.analysis.runs import child_runs, client, find_study, sqlite_uri
from hybridlens.analysis.selection import select_best


@pytest.fixture
def store(tmp_path):
    uri = sqlite_uri(tmp_path)
    c = client(uri)
    exp = c.create_experiment("s1", artifact_location=(tmp_path / "art").as_uri())
    parent = c.create_run(exp, tags={TAG_STUDY: "s1", TAG_KIND: "parent"}).info.run_id

    def add(arch, act, seed, val, test, status="FINISHED", outcome="finished", task="task1"):
        r = c.create_run(exp, tags={TAG_PARENT: parent, TAG_KIND: "trial", TAG_OUTCOME: outcome}).info.run_id
        for k, v in dict(architecture=arch, activation=act, seed=seed, task=task).items():
            c.log_param(r, k, v)
        c.log_metric(r, "best_val_aupr", val)
        c.log_metric(r, "test_aupr", test)
        c.set_terminated(r, status)
        return r

    ids = {
        "a0": add("C24", "exp", 0, 0.5, 0.9),
        "a1": add("C24", "exp", 1, 0.7, 0.1),
        "a2": add("C24", "exp", 2, 0.6, 0.5),
        "a3": add("C24", "exp", 3, 0.9, 0.2, status="FAILED", outcome="diverged"),
        "b0": add("C24", "relu", 0, 0.4, 0.4),
        "c0": add("C4", "exp", 0, 0.3, 0.3, task="task2"),
    }
    return uri, exp, parent, ids


def test_best_k_on_validation_skipping_failed_and_diverged(store):
    uri, exp, parent, ids = store
    runs = child_runs(client(uri), exp, parent)
    sel = select_best(runs, task="task1", top_k=2)
    assert [r.info.run_id for r in sel.chosen[("C24", "exp", "")]] == [ids["a1"], ids["a2"]]
    assert [r.info.run_id for r in sel.chosen[("C24", "relu", "")]] == [ids["b0"]]
    reasons = {r.info.run_id: why for r, why in sel.skipped}
    assert reasons[ids["a3"]] == "diverged" and "task2" in reasons[ids["c0"]]


def test_rank_on_test_as_the_reference_code(store):
    uri, exp, parent, ids = store
    sel = select_best(child_runs(client(uri), exp, parent), task="task1", top_k=1, rank_on="test")
    assert sel.chosen[("C24", "exp", "")][0].info.run_id == ids["a0"]


def test_mixed_tasks_need_a_task_and_study_lookup(store):
    uri, exp, parent, ids = store
    with pytest.raises(ValueError, match="name one with --task"):
        select_best(child_runs(client(uri), exp, parent))
    assert find_study(uri, "s1").parent.info.run_id == parent
    with pytest.raises(ValueError, match="unknown study 'nope'.*s1"):
        find_study(uri, "nope")


def test_best_k_of_n_says_the_real_numbers(store):
    """C24-exp has 3 finished runs, C24-relu 1: with top_k 2 the selection keeps 1-2 of 1-3, and with
    top_k 5 (more than any configuration has) it never claims 5."""
    uri, exp, parent, ids = store
    runs = child_runs(client(uri), exp, parent)
    sel = select_best(runs, task="task1", top_k=2)
    assert sel.available == {("C24", "exp", ""): 3, ("C24", "relu", ""): 1}
    assert sel.best_of() == "best 1-2 of 1-3"
    only_exp = [r for r in runs if r.data.params["activation"] == "exp"]
    assert select_best(only_exp, task="task1", top_k=5).best_of() == "best 3 of 3"
    assert select_best(only_exp, task="task1", top_k=2).best_of() == "best 2 of 3"


def test_axis_values_make_configurations_and_stopped_runs_stay_out(tmp_path):
    """Runs of one architecture and activation with different axis values are different
    configurations (ranked apart); a run the scheduler stopped (KILLED, outcome stopped) is never
    selected."""
    import json

    from hybridlens.analysis.mlflow_layout import OUTCOME_STOPPED

    uri = sqlite_uri(tmp_path)
    c = client(uri)
    exp = c.create_experiment("s2", artifact_location=(tmp_path / "art").as_uri())
    parent = c.create_run(exp, tags={TAG_STUDY: "s2", TAG_KIND: "parent"}).info.run_id
    ids = {}
    for name, pool, seed, val, status, outcome in [("p4a", 4, 0, 0.5, "FINISHED", "finished"), ("p4b", 4, 1, 0.6, "FINISHED", "finished"),
                                                   ("p25", 25, 0, 0.4, "FINISHED", "finished"),
                                                   ("p25s", 25, 1, 0.9, "KILLED", OUTCOME_STOPPED)]:  # fmt: skip
        r = c.create_run(exp, tags={TAG_PARENT: parent, TAG_KIND: "trial", TAG_OUTCOME: outcome}).info.run_id
        params = dict(
            architecture="cnn-pool", activation="relu", seed=seed, task="task1", axes=json.dumps({"model.first_pool": pool})
        )
        for k, v in params.items():
            c.log_param(r, k, v)
        c.log_metric(r, "best_val_aupr", val)
        c.set_terminated(r, status)
        ids[name] = r
    sel = select_best(child_runs(c, exp, parent), task="task1", top_k=1)
    assert [r.info.run_id for r in sel.chosen[("cnn-pool", "relu", "first_pool=4")]] == [ids["p4b"]]
    assert [r.info.run_id for r in sel.chosen[("cnn-pool", "relu", "first_pool=25")]] == [ids["p25"]]
    assert sel.axes == {"first_pool=4": {"model.first_pool": 4}, "first_pool=25": {"model.first_pool": 25}}
    assert {r.info.run_id: why for r, why in sel.skipped} == {ids["p25s"]: OUTCOME_STOPPED}


def test_a_search_ranks_its_draws_within_the_grid_cell(tmp_path):
    """A random search's runs of one grid cell (its grid axis too) are one configuration whatever rate
    each drew: best-k picks among the draws, the drawn values stay each run's own and name it (every
    draw was its own configuration; review finding M3 of #23)."""
    import json

    from hybridlens.analysis.selection import run_axes, run_drawn, run_label

    uri = sqlite_uri(tmp_path)
    c = client(uri)
    exp = c.create_experiment("s3", artifact_location=(tmp_path / "art").as_uri())
    parent = c.create_run(exp, tags={TAG_STUDY: "s3", TAG_KIND: "parent"}).info.run_id
    ids = {}
    for name, pool, lr, val in [("a", 4, 1e-3, 0.5), ("b", 4, 2e-4, 0.7), ("c", 4, 5e-3, 0.6), ("d", 25, 3e-4, 0.4)]:
        r = c.create_run(exp, tags={TAG_PARENT: parent, TAG_KIND: "trial", TAG_OUTCOME: "finished"}).info.run_id
        axes = {"model.first_pool": pool, "train.lr": lr}
        params = dict(architecture="cnn-pool", activation="relu", seed=0, task="task1", axes=json.dumps(axes),
                      drawn=json.dumps(["train.lr"]))  # fmt: skip
        for k, v in params.items():
            c.log_param(r, k, v)
        c.log_metric(r, "best_val_aupr", val)
        c.set_terminated(r, "FINISHED")
        ids[name] = r
    sel = select_best(child_runs(c, exp, parent), task="task1", top_k=2)
    assert {k: [r.info.run_id for r in rs] for k, rs in sel.chosen.items()} == {
        ("cnn-pool", "relu", "first_pool=4"): [ids["b"], ids["c"]],
        ("cnn-pool", "relu", "first_pool=25"): [ids["d"]],
    }
    assert sel.available == {("cnn-pool", "relu", "first_pool=4"): 3, ("cnn-pool", "relu", "first_pool=25"): 1}
    best = sel.chosen[("cnn-pool", "relu", "first_pool=4")][0]
    assert run_axes(best) == {"model.first_pool": 4} and run_drawn(best) == {"train.lr": 2e-4}
    assert run_label(best) == "cnn-pool-relu-first_pool4-lr0.0002-s0"
