"""The injection pilot (`injection.auto`), in one place: which candidate settings it tries and how they
are written (candidates.py), how a candidate's pilot images are scored without a bias label
(scoring.py), a round of generation with successive halving (rounds.py), the reference models it reads
a label from (references.py), and the driver that runs it for `inject` and `fair_finetune` and draws
pilot.png (driver.py)."""
