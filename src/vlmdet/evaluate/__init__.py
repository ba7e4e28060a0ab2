"""vlmdet.evaluate"""
