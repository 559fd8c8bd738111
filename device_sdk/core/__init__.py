"""The tier core: what every tier decides, apart from how requests reach it.

Exit policies (:mod:`.policy`), a tier's loaded model and its decisions (:mod:`.tier`),
the rules for answering another tier's request (:mod:`.serving`) and the whole cascade
chained in one process (:mod:`.chain`). No transport, no threads: the device client, the
gateway service and the cloud's inference are I/O shells around it.
"""
