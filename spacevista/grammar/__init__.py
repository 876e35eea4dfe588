"""The answer grammar: what a completion's output tags, quantities (numbers with units), choice letters,
counts and texts mean (`parse`), and a record's ground truth in that grammar (`truth`).

It sits below both records (validation) and rewards (scoring), so the two read answers one way. Pure
Python over `spacevista.scales`: no torch, no Ray, no numpy.
"""
