"""lmgauge"""
