import logging
def test_demo_fails():
    logging.getLogger("x").warning("a log line")
    print("some stdout")
    assert 1 + 1 == 3, "deliberate"
