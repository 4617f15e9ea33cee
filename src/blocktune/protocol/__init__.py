"""The protocol's pure decisions: the plan of trials still to run (:mod:`.plan`), the selection
rules that pick each strategy's candidate (:mod:`.select`), and the procedures that choose the
recommendation among the finals (:mod:`.recommend`). Nothing here trains or writes files."""
