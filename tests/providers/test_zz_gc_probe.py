import gc


def test_collect() -> None:
    gc.collect()
