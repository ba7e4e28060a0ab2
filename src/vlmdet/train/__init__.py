"""vlmdet.train"""
