"""Scoring studies: the Predictor (batched inference, a result cache keyed by pixels × weights,
progress), its result types (StudyPrediction, SlicePrediction) and their JSON document
(prediction_json, written by core.predict and the training run). It may import the base
modules, core.dicom, core.imaging and core.model.
"""
