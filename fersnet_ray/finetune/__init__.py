"""Stage 4: fine-tune each fold's FERSNet on real + synthetic faces (FES-DA)."""
