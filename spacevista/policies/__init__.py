"""The policy model: a Qwen-VL base (`tiny` builds the offline test model and loads any local one), its
LoRA scale experts (`experts`), the scale router (`router`), chat and prompt encoding (`chat`, `prompts`)
and the dense branch (`dense/`). The model layer imports no Ray; what trains it is `spacevista.learner`."""
