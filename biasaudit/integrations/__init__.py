"""Callbacks that apply the components of `biasaudit.methods` inside the frameworks users train in.

    biasaudit.integrations.lightning   Lightning: BiasFixCallback, scale_as_loss      pip install "biasaudit[lightning]"
    biasaudit.integrations.hf          Hugging Face Trainer: BiasFixCallback,         pip install "biasaudit[hf]"
                                       BiasFixTrainer

Each module imports its framework, so it is importable only where that framework is installed; `import biasaudit`
never imports them. The README's "Fixing in your own training loop" shows the lines a user adds.
"""
