"""Phase 1 (Ray Data: the labelled table) and phase 2 (Ray Train: the routers, evaluation).

Empty until those issues land; the serving path does not depend on it.
"""
