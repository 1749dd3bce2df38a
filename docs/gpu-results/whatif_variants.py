import sys, numpy as np, pyarrow.parquet as pq, pyarrow.compute as pc
rng=np.random.default_rng(1)
P=np.arange(1,200)/200
U1=rng.random(40000); U2=rng.random(40000)
def interp(g,u): return np.interp(u,P,g)
for f in sys.argv[1:]:
    t=pq.read_table(f); t=t.filter(pc.equal(t['arrival'],True))
    res={}
    for kern in ['fft','gemm']:
        r=t.filter(pc.equal(t['kernel'],kern))
        k=np.array([int(x.split('=')[1]) for x in r['phase'].to_pylist()])
        q=np.array(r['queue_ms'].to_pylist(),float); w=np.array(r['wall_ms'].to_pylist(),float)
        rest=w-q
        Q={K:np.quantile(q[k==K],P) for K in sorted(set(k))}
        base=np.sort(q[k==0]); q0m=np.median(base)
        restl=np.concatenate([rest[k==1],rest[k==3]])
        def pick(v,u): return v[np.minimum((u*len(v)).astype(int),len(v)-1)]
        for name in ['V1','V2','V3','V4']:
            if name=='V1': g=(1*(Q[1]-Q[0])+3*(Q[3]-Q[0]))/10
            elif name in('V2','V3'): g=((Q[1]-Q[0])+(Q[3]-Q[0])/3)/2
            else: g=((Q[1]-q0m)+(Q[3]-q0m)/3)/2
            g=np.maximum(g,0)
            errs=[]
            for K in [2,4,6]:
                if name in('V1','V2'): d=pick(base,U1)+K*interp(g,U1)
                else: d=pick(base,U2)+K*interp(g,U1)
                d=d+pick(restl,rng.random(40000))
                pr=np.quantile(d,[0.5,0.99]); m=np.quantile(w[k==K],[0.5,0.99])
                errs+=list(100*(pr-m)/m)
            res.setdefault(name,[]).append((kern,errs))
    print(f.split('/')[-2])
    for name,v in res.items():
        allv=[e for _,es in v for e in es]
        print(' ',name,' '.join(f"{kern}:"+','.join(f'{e:+.0f}' for e in es) for kern,es in v),' max|e|=%.1f'%max(abs(x) for x in allv))
