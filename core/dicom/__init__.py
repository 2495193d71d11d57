"""Reading studies: the safe archive reader (zip, folder, bytes), one DICOM file → a CT slice
in HU or a reason to skip it, and the grouping of slices into Study and Series ordered along
the patient axis. The first room on the road: it imports only the base modules
(core.labels, core.errors, core.notice), pydicom and numpy.
"""
