"""The routing-policy interface and the simple policies."""

from collections import Counter

import pytest

from router.config import PolicyConfig
from router.policy import (
    FixedPolicy,
    Message,
    RandomPolicy,
    RoutingDecision,
    RoutingPolicy,
    available_policies,
    build_policy,
    register_policy,
    to_messages,
)

EXPERTS = ["general", "math", "code"]
CONVERSATION = [Message("user", "What is 2 + 2?")]


def test_decision_ranks_by_score():
    decision = RoutingDecision.from_scores({"a": 0.1, "b": 0.9, "c": 0.5})
    assert decision.ranking == ("b", "c", "a") and decision.expert == "b"


def test_random_policy_is_seeded_and_covers_all_experts():
    def rankings(seed: int) -> list[tuple[str, ...]]:
        policy = RandomPolicy(EXPERTS, seed=seed)
        return [policy.route(CONVERSATION).ranking for _ in range(50)]

    assert rankings(3) == rankings(3)  # the whole sequence repeats (one draw would match by chance)
    assert rankings(3) != rankings(4)
    policy = RandomPolicy(EXPERTS, seed=0)
    counts = Counter(policy.route(CONVERSATION).expert for _ in range(600))
    assert set(counts) == set(EXPERTS) and min(counts.values()) > 150


def test_ranking_lists_every_candidate_once():
    decision = RandomPolicy(EXPERTS, seed=1).route(CONVERSATION)
    assert sorted(decision.ranking) == sorted(EXPERTS)
    assert set(decision.scores) == set(EXPERTS)


def test_fixed_policy_puts_its_expert_first_then_config_order():
    decision = FixedPolicy(EXPERTS, expert="code").route(CONVERSATION)
    assert decision.ranking == ("code", "general", "math")


def test_candidates_restrict_the_ranking():
    decision = FixedPolicy(EXPERTS, expert="code").route(CONVERSATION, candidates=["math", "general"])
    assert decision.ranking == ("general", "math")
    with pytest.raises(ValueError, match="no candidate"):
        FixedPolicy(EXPERTS, expert="code").route(CONVERSATION, candidates=["nobody"])


def test_build_policy_by_name_and_clear_errors():
    assert isinstance(build_policy(PolicyConfig(name="fixed", args={"expert": "math"}), EXPERTS), FixedPolicy)
    with pytest.raises(ValueError, match="unknown routing policy 'magic'"):
        build_policy(PolicyConfig(name="magic"), EXPERTS)
    with pytest.raises(ValueError, match="unknown expert 'art'"):
        build_policy(PolicyConfig(name="fixed", args={"expert": "art"}), EXPERTS)
    with pytest.raises(ValueError, match="bad args"):
        build_policy(PolicyConfig(name="random", args={"temperature": 2}), EXPERTS)


def test_new_policies_plug_in_by_name():
    class LongestWins(RoutingPolicy):
        """Sends long conversations to the last expert: a policy that reads the messages."""

        def scores(self, messages, cost_weight=None):
            long = sum(len(m.content) for m in messages) > 20
            return {name: float(long == (i == len(self.experts) - 1)) for i, name in enumerate(self.experts)}

    register_policy("longest-wins", LongestWins)
    assert "longest-wins" in available_policies()
    policy = build_policy(PolicyConfig(name="longest-wins"), EXPERTS)
    assert policy.route([Message("user", "hi")]).expert == "general"
    assert policy.route([Message("user", "x" * 50)]).expert == "code"


def test_to_messages_accepts_dicts_and_objects():
    class Obj:
        role, content, text = "user", ["parts"], "joined"

    assert to_messages([{"role": "system", "content": "s"}, Obj()]) == [
        Message("system", "s"),
        Message("user", "joined"),
    ]
