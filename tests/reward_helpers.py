"""Reward-test data shared by the reward test modules: a numeric indoor record and a well-formed answer to it."""

from spacevista.scales import format_output

RECORD = {
    "scale": "indoor",
    "task": "object_size",
    "answer": {"type": "numeric", "value": 3.2, "unit": "m", "choices": None},
}
GOOD = format_output("the sofa spans three tiles", "indoor", "3.2 m")  # format, scale and numeric: 1.0 each
