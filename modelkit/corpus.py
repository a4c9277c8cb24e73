"""Text the tokenizer of the random test model is trained on: the environments' own episodes.

The tokenizer should know the words the policy will read and write, so its corpus is every
environment's prompts plus the expert's actions and the observations they lead to.
"""

from __future__ import annotations

from collections.abc import Sequence

from environments import make_env, make_tasks


def environment_corpus(env_names: Sequence[str], tasks_per_env: int, seed: int) -> list[str]:
    texts: list[str] = []
    for name in env_names:
        env = make_env(name)
        for task in make_tasks(name, "train", tasks_per_env, seed):
            texts.append(env.reset(task))
            for _ in range(env.max_turns):
                action = env.expert_action()
                result = env.step(action)
                texts.extend((action, result.observation))
                if result.done:
                    break
    return texts
