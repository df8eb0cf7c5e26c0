"""Outputs of a run as sinks: each explained image goes to every sink of the run (files and
JSON, the HTML report), built from the output settings by :func:`build_sinks`; every record
carries the run's description (:func:`describe_run`)."""
from .build import build_sinks
from .files import ResultWriter, top_words
from .report import ReportSink, write_report
from .run import describe_run
from .sink import Sink, Sinks

__all__ = ['ResultWriter', 'ReportSink', 'Sink', 'Sinks', 'build_sinks', 'describe_run',
           'top_words', 'write_report']
