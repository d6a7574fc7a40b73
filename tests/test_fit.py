"""The Ray Tune fit's driver side: what a restored Tuner gives back."""

from pathlib import Path

from test_launches import _launch

from hybridlens.study import fit


def _trainable(config):
    return {"x": 1}


def test_a_restored_tuner_marks_stopped_runs_in_the_launch_that_resumes_it(tmp_path):
    """Ray saves the run config's callbacks in tuner.pkl and Tuner.restore hands that copy back: the
    progress callback must come back bound to the launch of the resuming process (a moved or copied
    workdir), not to the one it was saved with (review finding M4 of #23)."""
    from ray import tune

    first, moved = _launch(tmp_path / "first"), _launch(tmp_path / "moved")
    storage = Path(first.storage_path)
    fit._DRIVER.update(echo=print, total=3, launch=first)
    tune.Tuner(
        _trainable,
        param_space={"pack": 0},
        run_config=tune.RunConfig(name="exp", storage_path=str(storage), callbacks=[fit._progress_callback(print, 3, first)]),
    )  # writes tuner.pkl, as a launch does before fit
    assert (storage / "exp" / "tuner.pkl").is_file()
    try:
        fit._DRIVER.update(echo=print, total=3, launch=moved)
        restored = tune.Tuner.restore(str(storage / "exp"), _trainable)
        (callback,) = restored._local_tuner.get_run_config().callbacks
        assert callback.launch is moved and callback.launch.workdir == str(tmp_path / "moved")
    finally:
        fit._DRIVER.clear()


def test_without_a_driven_launch_the_callback_keeps_the_one_it_was_saved_with(tmp_path):
    """Ray Client (``ray://``) builds the Tuner in a remote actor, where this process' launch is not
    known: the callback unpickles bound to the launch it was pickled with, never to none."""
    from ray import cloudpickle

    first = _launch(tmp_path / "first")
    fit._DRIVER.clear()
    callback = cloudpickle.loads(cloudpickle.dumps(fit._progress_callback(print, 3, first)))
    assert callback.launch == first and callback.launch is not first
