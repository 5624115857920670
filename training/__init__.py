"""Training the gate into language models: data, model, loop and report (issue 25)."""
