"""(being written: see the issue tracker)"""
__all__ = []
