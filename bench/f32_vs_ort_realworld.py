import time, numpy as np, onnx, onnxruntime as ort, subprocess, json, sys
# Float latency of lowbit and ONNX Runtime (1 thread, same run) on the zoo detector and segmentation model.
def sess(path, shape):
    m=onnx.load(path)
    for d in m.graph.input[0].type.tensor_type.shape.dim: d.ClearField('dim_value'); d.dim_param='d'
    for o in m.graph.output:
        for d in o.type.tensor_type.shape.dim: d.ClearField('dim_value'); d.dim_param='o'
    o=ort.SessionOptions(); o.intra_op_num_threads=1; o.log_severity_level=3
    return ort.InferenceSession(m.SerializeToString(),o,providers=['CPUExecutionProvider'])
for name,shape in [('det-centerface',(1,3,480,640)),('seg-u2netp',(1,3,320,320))]:
    p=f'/work/shared/zoo/{name}.onnx'; s=sess(p,shape); x=np.random.rand(*shape).astype(np.float32)
    feed={s.get_inputs()[0].name:x}; s.run(None,feed)
    t=[]
    for _ in range(5):
        a=time.perf_counter(); s.run(None,feed); t.append((time.perf_counter()-a)*1e3)
    ort_ms=float(np.median(t))
    r=subprocess.run(['./target/release/lowbit','bench',p,'--input-shape',','.join(map(str,shape)),'--iters','5','--warmup','1','--json','/tmp/b.json'],capture_output=True,text=True)
    lb=json.load(open('/tmp/b.json'))
    ms=lb.get('median_ms') or lb.get('median') or lb
    print(name, shape, 'ORT f32 median ms', round(ort_ms,1), 'lowbit', ms if isinstance(ms,float) else {k:v for k,v in lb.items() if 'ms' in k or 'path' in k})
