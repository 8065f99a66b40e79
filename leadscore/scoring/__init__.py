"""The scorer every consumer imports: scores, reasons, sentences, contact slots; no I/O."""
