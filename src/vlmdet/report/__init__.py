"""vlmdet.report"""
