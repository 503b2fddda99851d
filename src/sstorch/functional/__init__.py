"""Kronecker math on plain tensors: ``kron``, mode products ``X ×1 U1 … ×K UK``, the nearest
Kronecker product (Van Loan–Pitsianis). No modules, no state."""
