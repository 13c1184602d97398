"""Registration on the platform: the learned task (``medlens train --task registration``: plan,
data, network, pre-alignment, train, predict, evaluate) and the report of a registration."""
