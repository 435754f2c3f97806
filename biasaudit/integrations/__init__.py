"""Where biasaudit meets the tools teams already use: the frameworks they train in and the trackers they read.

    biasaudit.integrations.lightning        Lightning: BiasFixCallback, scale_as_loss   pip install "biasaudit[lightning]"
    biasaudit.integrations.hf               Hugging Face Trainer: BiasFixCallback,      pip install "biasaudit[hf]"
                                            BiasFixTrainer
    biasaudit.integrations.lightning_audit  Lightning: AuditCallback (audits during     pip install "biasaudit[lightning]"
                                            training, docs/training-audits.md)
    biasaudit.integrations.hf_audit         Hugging Face Trainer: AuditCallback         pip install "biasaudit[hf]"
    biasaudit.integrations.tracking*        MLflow and Weights & Biases (ba.log,        pip install "biasaudit[mlflow]"
                                            --log; docs/trackers.md)                    or "biasaudit[wandb]"

The fix callbacks apply the components of `biasaudit.methods`; the audit callbacks run a scan every N validations and
log its measures through the framework's logger. Each framework module imports its framework, so it is importable
only where that framework is installed; `import biasaudit` never imports them. The README's "Fixing in your own
training loop" and "Where results go" show the lines a user adds.
"""
