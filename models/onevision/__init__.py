"""LLaVA-OneVision (SigLIP + Qwen2, anyres images, multi-image, video) in pure PyTorch; see model.py."""
