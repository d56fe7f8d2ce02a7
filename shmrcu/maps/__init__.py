"""Maps in shared memory: the handle classes and the functions that create, open and
list them (one module per concept: ``handles.py``, ``registry.py``; the C level is
``_kernels``/``_batch``/``_maps``).

    flows = rt.create_map("hash", key="I", value="QQ", max_entries=1 << 16, name="flows")
    flows[7] = (1, 1500)
    flows.add(7, (1, 60))                        # atomic per-field add
    outer = rt.create_map("array_of_maps", max_entries=4, inner=flows)
    outer[0] = flows                             # template checked: kind, formats, flags
"""
from ._maps import ANY, EXIST, NOEXIST
from .handles import (ArrayMap, ArrayOfMaps, HashMap, HashOfMaps, LpmTrieMap, Map, PerWorkerArrayMap,
                      PerWorkerHashMap, SectionBound)
from .registry import (KIND_NAMES, KINDS, STATE_NAMES, STATES, create_map, destroy_map, drop_freed,
                       list_maps, open_map, set_map_state)
# for the runtime and the controller (package-internal)
from .registry import (close_handles, directory_locked, freed_handles, mapped_ids,  # noqa: F401
                       mark_all_freed, outer_insert_lock, rebind_inherited)

__all__ = [
    "ANY", "NOEXIST", "EXIST", "KINDS",
    "Map", "ArrayMap", "HashMap", "PerWorkerArrayMap", "PerWorkerHashMap", "ArrayOfMaps", "HashOfMaps",
    "LpmTrieMap",
    "create_map", "open_map", "list_maps", "drop_freed", "set_map_state", "destroy_map",
    "SectionBound", "KIND_NAMES", "STATES", "STATE_NAMES",
]
