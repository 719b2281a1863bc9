"""Delivery providers: one small class per vendor behind one interface."""
