"""Fix methods as components for any PyTorch training loop (methods.md section 8): a loss, a backward, an
after-backward hook, an epoch-end step or a post-hoc refit, on plain tensors and modules, with no Adapter."""
