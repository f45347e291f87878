"""The verifier: parse model output, validate arguments against JSON Schema, match expected calls with
BFCL's AST rules, label errors, and score. Pure Python: imports no torch, loads in milliseconds."""
