"""MRI reconstruction: k-space physics, masks, coil maps, simulation, classical baselines and the
unrolled network (:mod:`.kspace`, :mod:`.masks`, :mod:`.coils`, :mod:`.simulate`, :mod:`.raw`,
:mod:`.baselines`, :mod:`.unrolled`)."""
