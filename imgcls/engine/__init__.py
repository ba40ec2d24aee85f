"""Training and evaluation: the loop, its optimizer/schedule, state and callbacks."""
