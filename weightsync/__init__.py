"""How a policy version's bytes get from the learner to the actors: through the bus's object
store (every actor reads every version), or by a ``torch.distributed`` broadcast from the
learner to the actors that joined its group, with the object store kept for the others.
"""
