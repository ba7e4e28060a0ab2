"""vlmdet.data"""
