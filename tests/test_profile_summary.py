"""bench.profile_summary: a py-spy raw profile summed by function, inclusive and self (no services needed)."""

from __future__ import annotations

from bench.profile_summary import jfr_stacks, main, read_profile, shares

PROFILE = """\
_bootstrap (threading.py:1002);run (threading.py:982);_loop (paho/mqtt/client.py:1663) 6
_bootstrap (threading.py:1002);run (threading.py:982);_loop (paho/mqtt/client.py:1686);loop_read (paho/mqtt/c.py:2097) 3
_bootstrap (threading.py:1002);_send_loop (bridge.py:434);send (kafka/producer/kafka.py:880) 1
not a stack line
"""


def test_shares_are_by_function_whatever_the_line(tmp_path):
    path = tmp_path / "gateway.txt"
    path.write_text(PROFILE)
    total, inclusive, own = shares(read_profile(path))
    assert total == 10
    assert inclusive["_loop (paho/mqtt/client.py)"] == 9  # lines 1663 and 1686: one function
    assert inclusive["_bootstrap (threading.py)"] == 10
    assert own == {"_loop (paho/mqtt/client.py)": 6, "loop_read (paho/mqtt/c.py)": 3,
                   "send (kafka/producer/kafka.py)": 1}


def test_the_summary_prints_shares_and_refuses_what_is_not_a_profile(tmp_path, capsys):
    path = tmp_path / "gateway.txt"
    path.write_text(PROFILE)
    assert main([str(path), "--top", "2"]) == 0
    out = capsys.readouterr().out
    inclusive = out.split("self:")[0]
    assert "10 samples" in out and " 90.0%  _loop (paho/mqtt/client.py)" in inclusive  # ties by name: before run
    assert "run (threading.py)" not in inclusive
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    assert main([str(empty)]) == 1
    assert "no samples" in capsys.readouterr().err


JFR_PRINT = """\
jdk.ExecutionSample {
  startTime = 12:21:11.264
  sampledThread = "Executor task launch worker for task 3.0 in stage 12.0 (TID 40)" (javaThreadId = 81)
  state = "STATE_RUNNABLE"
  stackTrace = [
    java.lang.Long.getChars(long, int, byte[]) line: 553
    java.lang.Long.toString(long) line: 493
    ...
  ]
}

jdk.ExecutionSample {
  startTime = 12:21:11.275
  sampledThread = "Executor task launch worker for task 4.0 in stage 13.0 (TID 41)" (javaThreadId = 82)
  state = "STATE_RUNNABLE"
  stackTrace = [
    java.lang.Long.toString(long) line: 490
  ]
}
"""


def test_a_jfr_recordings_samples_are_stacks_under_their_kind_of_thread():
    worker = "thread Executor task launch worker for task N.N in stage N.N (TID N)"
    assert jfr_stacks(JFR_PRINT) == [
        ([worker, "java.lang.Long.toString(long)", "java.lang.Long.getChars(long, int, byte[])"], 1),
        ([worker, "java.lang.Long.toString(long)"], 1)]
