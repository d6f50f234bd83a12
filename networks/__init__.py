"""VA-MoE networks: the ViT backbone whose feed-forward layers are a channel-adaptive MoE."""
