"""Making and judging a model: slice datasets (study zips, the challenge's folder, PNG folders),
the training run, cross-validation, evaluation and its metrics. It may import the base modules,
core.dicom, core.imaging, core.model and core.inference; never core.review or core.reports.
"""
