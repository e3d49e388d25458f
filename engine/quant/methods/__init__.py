"""The methods: GPTQ's solver (gptq.py), stacks of matrices to a weight method by the registry
(matrices.py: WEIGHT_METHODS), MoE experts (experts.py), equivalent rescalings (mappings.py: which
inputs a rescaling reaches; scaling.py: what it changes; smoothing.py: SmoothQuant; awq.py and
awq_pass.py: AWQ's numerics and its pass over the set)."""
