"""vlmdet.model"""
