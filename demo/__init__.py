"""The sample shop: a stand-in for a real business's operational systems.

A shop database (customers, stores, products, orders, order items), a payment provider with an
HTTP API (payments and daily exchange rates), a generator that creates them from a seed, and a
simulator that moves them forward in time. The pipeline does not know it talks to a demo.
"""
