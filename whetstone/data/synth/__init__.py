"""`whetstone data synth` and `data paraphrase`: question-answer training data from documents.

chunks.py reads documents into sections with their line spans; roff.py reads manual pages; extract.py is the
structured floor (definitions, NAME lines, "X is Y" sentences, table rows); grounding.py decides whether an answer
is supported by its chunk; teacher.py is the model that writes and rewords questions; synth.py and paraphrase.py
are the two pipelines (docs/data.md, "data synth").
"""
