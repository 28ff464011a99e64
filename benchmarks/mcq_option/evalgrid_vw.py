import sys
from omnitrace_core import assembly
from omnitrace_core.curation import pos_weight
def _source_mass(self, toks):
    totals={}; ws=0.0
    for t in toks:
        w=pos_weight(t.pos or 'X', self.curation)*(t.mapping.confidence**self.curation.gamma)
        if w<=0 or not any(t.mapping.shares): continue
        ws+=w
        for unit,share in zip(self.units,t.mapping.shares,strict=True):
            totals[unit.source_id]=totals.get(unit.source_id,0.0)+w*share
    return {k:v/ws for k,v in totals.items()} if ws>0 else {}
assembly.SentenceAssembler._source_mass=_source_mass
exec(open('scratch/evalgrid.py').read())
