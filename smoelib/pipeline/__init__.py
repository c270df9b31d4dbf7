"""The pipeline model: ``pipeline.yml`` (YAML source with line numbers, schema, builder) ->
:class:`~smoelib.pipeline.topology.PipelineDAG` of typed node specs. Pure."""
