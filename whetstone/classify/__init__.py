"""Classification with a trained head or by label likelihood: predictions, metrics, the `predict` verb.

    metrics.py     accuracy, macro-F1, per-class scores and the confusion matrix
    predict.py     load a classify run (base + head [+ adapter]) or a generative run, and predict labels
    final.py       the end-of-training evaluation of a classify run (summary.json)
    commands.py    `whetstone predict`

The loss of the head lives with the other losses: whetstone/objectives/classify.py.
"""
