"""Scoring studies: the Predictor (batched inference, a result cache keyed by pixels × weights,
progress) and its result types (StudyPrediction, SlicePrediction). It may import the base
modules, core.dicom, core.imaging and core.model.
"""
